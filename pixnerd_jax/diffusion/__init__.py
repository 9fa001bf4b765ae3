"""Flow-matching objective and samplers (t = 0 is noise, t = 1 is data)."""
