"""The site director: submits pilots to computing elements and follows them to their end."""
