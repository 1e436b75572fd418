"""Stage 3: engines and runners; imports without torch (installed as ffx.runtime)."""
