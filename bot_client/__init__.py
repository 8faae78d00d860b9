"""Thin discord.py client: joins voice, plays the graph's frames, carries out the graph's actions.

It talks to the graph only over HTTP and WebSocket and never imports Ray.
"""
