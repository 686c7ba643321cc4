"""Layer 9: publishing a model to the Hub with its card, and making a Space that runs the app."""
