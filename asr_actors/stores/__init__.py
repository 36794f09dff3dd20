"""What gateways keep besides sessions, shared through Redis in scale-out mode: `redis.py`."""
