"""What the bot does, with no platform and no SQL: steering, variants, chat turns, inspection."""
