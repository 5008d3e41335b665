// Evaluate prompts as flags with OpenFeature's own Node server SDK and OFREP provider.
// node evaluate.mjs BASE_URL TOKEN USER... -> JSON on stdout
import { OpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';

const [baseUrl, token, ...users] = process.argv.slice(2);
await OpenFeature.setProviderAndWait(
  new OFREPProvider({ baseUrl, headers: [['Authorization', `Bearer ${token}`]] }),
);
const client = OpenFeature.getClient();
const split = {};
for (const user of users) {
  const d = await client.getStringDetails('cs', 'fallback', { targetingKey: user });
  split[user] = { value: d.value, reason: d.reason, variant: d.variant };
}
const unknown = await client.getStringDetails('customer-suport', 'fallback', { targetingKey: 'u' });
console.log(JSON.stringify({ split, unknown: { value: unknown.value, errorCode: unknown.errorCode } }));
await OpenFeature.close();
