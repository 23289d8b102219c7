"""The measurements and reports behind docs/: the library never imports them; the CLI and scripts/ do."""
