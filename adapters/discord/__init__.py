"""The Discord bot: app.py wires it; settings.py holds its DISCORD_* settings."""
