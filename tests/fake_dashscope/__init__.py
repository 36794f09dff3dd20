"""A protocol-accurate fake of DashScope's realtime recognition WebSocket service, for the real SDK."""
