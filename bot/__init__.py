"""The bot core. Layers, outermost first: commands -> usecases -> domain; backend and ops beside."""
