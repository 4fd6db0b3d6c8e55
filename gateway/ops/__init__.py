"""Operations: fleet status, runtime control, audit, search, accounts (used by the HTTP API and the CLI)."""
