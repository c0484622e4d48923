"""HTTP routes: short handlers that read input, call one function and return a Struct."""
