"""Detection: judge each live version against its policy, and act on the verdict."""
