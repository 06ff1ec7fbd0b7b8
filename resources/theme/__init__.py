"""The console's dark high-contrast theme: a Qt stylesheet (dark.qss) and SVG icons (icons/)."""
