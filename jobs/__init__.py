"""Thin entry points (console scripts ``gaga-*``): parse a config, call one library function."""
