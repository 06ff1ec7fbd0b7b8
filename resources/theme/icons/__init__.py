"""SVG icons of the console theme (package data)."""
