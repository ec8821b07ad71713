//! framegate's benchmarks: criterion micro-benchmarks of the data path stages
//! and the scripts that compare the gateway with its peers side by side.
