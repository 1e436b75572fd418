"""What a user runs on a model: verify (the accuracy gate), bench, predict, inspection."""
