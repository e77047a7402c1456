"""Config-driven runs, tables and reports."""
