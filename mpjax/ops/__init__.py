"""Platform-specific implementations behind configuration knobs (attention)."""
