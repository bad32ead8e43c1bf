"""``manage.py channels_ha``."""
