"""Human-readable reports (markdown tables, plots) rendered from json results."""
