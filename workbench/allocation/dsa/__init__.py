"""DSA: allocation functions discovered by evolutionary search (ops, functions as data, the search)."""
