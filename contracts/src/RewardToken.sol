// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title RewardToken
/// @notice Fixed-supply ERC-20 ("fedlearn reward", FLR, 18 decimals) paid out by {RewardPool}.
/// @dev The whole supply is minted once, in the constructor; there is no further minting.
contract RewardToken is ERC20 {
    /// @notice Mint the whole supply to `holder`.
    /// @param holder Account receiving the supply (it funds the reward pools).
    /// @param supply Total supply, in the smallest unit (18 decimals).
    constructor(address holder, uint256 supply) ERC20("fedlearn reward", "FLR") {
        _mint(holder, supply);
    }
}
