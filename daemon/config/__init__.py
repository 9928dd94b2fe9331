"""Configuration, read once: settings declarations, value parsing, config.properties."""
