"""The floor every command stands on, apart from the models: command-line checks and one-line
errors (cli), atomic writes (atomic), what this CPU offers (cpu), installed versions (versions)."""
