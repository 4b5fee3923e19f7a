"""Direct Group Preference Optimization as a preset of parts."""
