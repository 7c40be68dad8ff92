//! paxos — one Multi-Paxos group per Kith volume, as a sans-IO state machine.
