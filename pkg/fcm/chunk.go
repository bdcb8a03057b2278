package fcm

// MaxMulticast is the most tokens FCM takes in one multicast; the SDK refuses more.
const MaxMulticast = 500

// Chunk splits tokens into consecutive chunks of size tokens (the last may be shorter).
// size is clamped to 1..MaxMulticast. The chunks share tokens' backing array, nothing is
// copied; each chunk's capacity ends at its length, so appending to one cannot overwrite
// the next. No tokens give no chunks.
func Chunk(tokens []string, size int) [][]string {
	size = min(max(size, 1), MaxMulticast)
	if len(tokens) == 0 {
		return nil
	}
	chunks := make([][]string, 0, (len(tokens)+size-1)/size)
	for len(tokens) > size {
		chunks = append(chunks, tokens[:size:size])
		tokens = tokens[size:]
	}
	return append(chunks, tokens[:len(tokens):len(tokens)])
}
