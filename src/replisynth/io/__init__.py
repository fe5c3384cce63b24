"""Source files in, outputs out (atomically), and the column schema."""
