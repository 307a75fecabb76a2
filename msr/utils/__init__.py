"""Small helpers with no ML in them: atomic artifact writes, logging setup."""
