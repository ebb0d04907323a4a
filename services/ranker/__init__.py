"""The ranker: applies score events to board sorted sets and publishes rank changes."""
