"""The admin panel's logic without Ray or HTTP: passwords, login lockout, panel sessions, latency history."""
