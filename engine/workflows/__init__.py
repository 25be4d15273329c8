"""Multi-step jobs built on the rest: quantize-and-evaluate over seeds, personalisation, sweeps."""
