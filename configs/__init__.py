"""Jinja2 templates and example plans, shipped inside the wheel as ``emulator.configs``."""
