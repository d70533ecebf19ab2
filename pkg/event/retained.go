package event

// Retained is the capacity of the Decoder's buffers in bytes. Pools drop decoders that
// grew large (a 10 MiB batch) instead of keeping that memory forever.
func (d *Decoder) Retained() int {
	return cap(d.clean) + cap(d.payload) + cap(d.context) + d.scanner.uniq.retained()
}
