"""The collaborative notes app: models, the WebSocket consumer, the page."""
