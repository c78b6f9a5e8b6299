"""Local fake provider servers (DashScope, Ark, Kling) speaking each protocol as its docs and SDK define it."""
