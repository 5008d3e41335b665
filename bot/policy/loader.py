"""Load `policies/*.yaml`: every problem reported with its file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.errors import BotError, ConfigError
from bot.policy.schema import PolicyFile, PolicySet, Rule, Settings, apply_rule_patches

SECTIONS = ("defaults", "rules", "new_version", "prometheus")


class PolicyError(BotError):
    """One or more policy files are invalid; `problems` holds one line per problem."""

    code = "invalid_policy"

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            f"invalid policy ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n  "
            + "\n  ".join(problems)
        )
        self.problems = problems

    def __reduce__(self) -> tuple[type[PolicyError], tuple[list[str]]]:
        # Rebuilt from its problems (not its message) when passed between processes.
        return (PolicyError, (self.problems,))


def load_policies(directory: str | Path) -> PolicySet:
    """Read and validate every `*.yaml`/`*.yml` in `directory`, or raise PolicyError."""
    folder = Path(directory)
    if not folder.is_dir():
        raise PolicyError([f"{folder}: no such directory (set ROLLBACK_POLICY_DIR)"])
    paths = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not paths:
        raise PolicyError([f"{folder}: no *.yaml policy files"])
    problems: list[str] = []
    parsed: list[tuple[Path, PolicyFile, yaml.Node]] = []
    for path in paths:
        result = _parse(path, problems)
        if result is not None:
            parsed.append(result)
    if problems:
        raise PolicyError(problems)
    policy = _merge(parsed, problems)
    if problems or policy is None:
        raise PolicyError(problems)
    return policy


def _parse(path: Path, problems: list[str]) -> tuple[Path, PolicyFile, yaml.Node] | None:
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read: {exc}")
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problems.append(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}")
        return None
    if data is None or node is None:
        data, node = {}, yaml.MappingNode("tag:yaml.org,2002:map", [])
    if not isinstance(data, dict):
        problems.append(f"{path}:1: a policy file must be a mapping of sections")
        return None
    before = len(problems)
    _duplicate_keys(path, node, problems)
    if len(problems) > before:
        return None
    try:
        return path, PolicyFile.model_validate(data), node
    except ValidationError as exc:
        for error in exc.errors():
            loc = list(error["loc"])
            line = _line_of(node, loc)
            field = ".".join(str(p) for p in loc) or "(file)"
            problems.append(f"{path}:{line}: {field}: {_message(error)}")
        return None


def _duplicate_keys(path: Path, node: yaml.Node, problems: list[str], where: str = "") -> None:
    """YAML lets the last of two equal keys win without a word: here it is an error."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = str(getattr(key, "value", key))
            field = f"{where}.{name}" if where else name
            line = key.start_mark.line + 1
            if name in first:
                problems.append(
                    f"{path}:{line}: {field}: given twice (first on line {first[name]}); keep one"
                )
            first.setdefault(name, line)
            _duplicate_keys(path, value, problems, field)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _duplicate_keys(path, item, problems, f"{where}.{index}")


def _message(error: Any) -> str:
    """pydantic's message, in the policy file's words."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if error.get("type") == "finite_number":
        return "must be a finite number (not .nan or .inf)"
    if error.get("type") in ("float_type", "int_type", "bool_type"):
        kind = {
            "float_type": "a number",
            "int_type": "a whole number",
            "bool_type": "true or false",
        }
        return f"must be {kind[error['type']]}, not {error.get('input')!r}"
    return message


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int:
    """The 1-based line of the YAML node at `loc`, or of its nearest existing parent."""
    line: int = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(
                (kv for kv in node.value if getattr(kv[0], "value", None) == str(part)), None
            )
            if pair is None:
                break
            # The key's line: a nested mapping's value starts on the line after it.
            node, line = pair[1], pair[0].start_mark.line + 1
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _merge(
    parsed: list[tuple[Path, PolicyFile, yaml.Node]], problems: list[str]
) -> PolicySet | None:
    found: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    lines: dict[str, int] = {}
    prompts: dict[str, Any] = {}
    for path, policy, node in parsed:
        for section in SECTIONS:
            value = getattr(policy, section)
            if value is None:
                continue
            if section in found:
                line = _line_of(node, [section])
                problems.append(f"{path}:{line}: {section}: already set in {origin[section]}")
            found[section], origin[section] = value, path
        for name, patch in policy.prompts.items():
            if name in prompts:
                problems.append(
                    f"{path}:{_line_of(node, ['prompts', name])}: prompts.{name}: "
                    f"already set in {origin['prompt:' + name]}"
                )
            prompts[name], origin["prompt:" + name] = patch, path
            lines["prompt:" + name] = _line_of(node, ["prompts", name])
    rules: tuple[Rule, ...] = tuple(found.get("rules") or ())
    _check_rules(rules, origin.get("rules"), problems)
    defaults: Settings = found.get("defaults") or Settings()
    if not any(rule.enabled for rule in rules):
        problems.append(
            f"{origin.get('rules') or parsed[0][0] if parsed else 'policies'}: rules: no rule is "
            "enabled, so nothing would ever be detected; define rules (start from the "
            "project's policies/default.yaml)"
        )
    for name, patch in prompts.items():
        where = f"{origin['prompt:' + name]}: prompts.{name}"
        try:
            effective = apply_rule_patches(rules, patch.rules)
        except ValidationError as exc:
            for error in exc.errors():
                if error.get("type") == "missing":
                    missing = ".".join(str(p) for p in error["loc"])
                    problems.append(
                        f"{where}.rules: a new rule needs metric, above (below for quality), "
                        f"severity and action: {missing} is missing"
                    )
                else:
                    problems.append(f"{where}.rules: {_message(error)}")
            effective = rules
        if rules and not any(rule.enabled for rule in effective):
            problems.append(
                f"{where}.rules: every rule is disabled for this prompt, so nothing about it "
                "would ever be detected; keep at least one enabled"
            )
        # The override's settings with the defaults must pass the settings' own checks too:
        # found only when the checker resolves the prompt, the error would stop every pass.
        changes = patch.model_dump(exclude_unset=True, exclude={"rules", "new_version"})
        if changes:
            try:
                Settings.model_validate({**defaults.model_dump(), **changes})
            except ValidationError as exc:
                problems.extend(f"{where}: {_message(error)}" for error in exc.errors())
        source = patch.source or defaults.source
        if source == "prometheus" and "prometheus" not in found:
            problems.append(
                f"{where}.source: prometheus is chosen but no file has a prometheus section"
            )
    if defaults.source == "prometheus" and "prometheus" not in found:
        problems.append(
            f"{origin.get('defaults')}: defaults.source: prometheus is chosen but no "
            "file has a prometheus section"
        )
    prometheus = found.get("prometheus")
    if prometheus is not None:
        # Imported only when a policy names Prometheus: it brings httpx and the metrics
        # machinery, which `policy check` of other policies never needs.
        from bot.metrics.prometheus import query_templates

        try:
            query_templates(prometheus)
        except ConfigError as exc:
            problems.append(f"{origin['prometheus']}: {exc.message}")
    if problems:
        return None
    return PolicySet(
        defaults=defaults,
        rules=rules,
        new_version=found.get("new_version"),
        prometheus=found.get("prometheus"),
        prompts=prompts,
        files=tuple(str(path) for path, _, _ in parsed),
        prompt_origins={
            name: f"{origin['prompt:' + name]}:{lines['prompt:' + name]}" for name in prompts
        },
    )


def _check_rules(rules: tuple[Rule, ...], path: Path | None, problems: list[str]) -> None:
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if rule.name in seen:
            problems.append(f"{path}: rules.{index}.name: duplicate rule name {rule.name!r}")
        seen.add(rule.name)
