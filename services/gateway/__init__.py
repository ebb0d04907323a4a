"""The gateway: pushes rank changes to clients over WebSockets."""
