"""DiffusionNFT as a preset of parts."""
