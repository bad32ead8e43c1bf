"""Django management commands of channels-ha."""
