//! The derived cluster model: addresses, CIDRs, endpoints and the component set of every host, computed
//! once from a validated inventory. Every later phase reads this instead of recomputing.
