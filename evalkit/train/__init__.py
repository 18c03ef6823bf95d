"""Training pieces several methods share: image bank, densification statistics, optimiser steps,
schedules. Method folders import these; they import no method."""
