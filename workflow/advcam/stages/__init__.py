"""The stages, one module each: read files → call the library → write files (atomically). The CLI calls one stage
function per command; nothing below the stages imports them."""
