"""Reserved for later layers (see STYLE.md)."""
