"""What the suite writes from records: leaderboards, the report and HTML page, targets, published numbers and
the README's headline table."""
