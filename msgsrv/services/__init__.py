"""The built-in services, one package each (the layout of issue 12)."""
