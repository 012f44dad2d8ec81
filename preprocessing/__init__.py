"""Pure per-clip preprocessing: decode, detect, crop, landmarks, FLAME tracking, pair sampling,
WebDataset sample encoding, and the generated mini-VFHQ. No Ray imports here."""
