"""Recipes shipped with secateur: `secateur recipes` lists them, `secateur compress NAME` runs one."""
