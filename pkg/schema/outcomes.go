package schema

// SettledOutcomes is the SQL list of delivery outcomes after which the sender does not send
// a token of a notification again: delivered, found invalid, handed to a retry (the
// retrier owns it), or expired. Failed tokens are not in it: a replay sends them again.
// The sender's audience query and the producer's replay count must agree on it, so it
// lives here, with the table.
const SettledOutcomes = `('delivered', 'invalid', 'retrying', 'expired')`
