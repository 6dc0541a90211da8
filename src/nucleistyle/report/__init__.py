"""Report figures and tables (matplotlib, Agg backend; nothing here needs a display)."""
