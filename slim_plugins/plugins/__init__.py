"""Plugins shipped with slim-plugins, one package each."""
